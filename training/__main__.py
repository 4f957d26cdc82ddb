"""`python -m her_sdk.training STAGE --config FILE [overrides]` (see `launch.py`)."""

from .launch import main

if __name__ == "__main__":
    main()
