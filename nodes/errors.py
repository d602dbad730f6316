"""The one exception type the pack raises for bad input or missing files.

Its message always says what was wrong and what to do; ComfyUI shows it in the node's error
popup instead of an opaque traceback, and the CLI prints it without one.
"""


class ScienceT2IError(ValueError):
    """Bad input, a missing or unusable model file, or a misconfiguration."""
