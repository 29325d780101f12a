"""kf-desktop: a live portrait avatar driven by webcam and microphone."""

__version__ = "0.1.0"
