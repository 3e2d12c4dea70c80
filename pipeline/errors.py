"""Errors the pipeline raises; the HTTP layer maps them to status codes."""


class InvalidImageError(ValueError):
    """The client sent something that is not a usable image (maps to 400)."""


class ImageTooLargeError(InvalidImageError):
    """Too many bytes (maps to 413)."""


class ModelNotLoadedError(RuntimeError):
    """A stage was asked to run but its weights could not be loaded (maps to 503)."""


class ModelLoadError(RuntimeError):
    """Weights are missing, corrupt, or do not match the architecture."""
