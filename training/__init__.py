"""HER training pipelines (data, SFT, reward model, RL). Installed as `her_sdk.training`."""
