"""Object detection beside a frozen backbone: detectors over side-network features and their box mAP."""
