"""oci-volume-csi: a CSI node plugin that mounts OCI artifacts read-only into pods."""

__version__ = "0.1.0"
DEFAULT_DRIVER_NAME = "oci-volume.csi.dev"
DEFAULT_STATE_DIR = "/var/lib/oci-volume-csi"
