"""Export of trained checkpoints to GGUF and ONNX. Installed as `her_sdk.export`."""
