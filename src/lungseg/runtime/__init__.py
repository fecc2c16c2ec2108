"""The deployable runtime: NumPy, OpenCV, Pillow, pydicom and ONNX Runtime (FastAPI for serving), no training stack.

A serving host installs `pip install lungseg` (plus `[serve]`, `[dicom]` or `[gpu]`), not torch;
tests/test_runtime_isolation.py checks that nothing here imports the training side.
"""
