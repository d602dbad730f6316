import subprocess
import sys
import textwrap
def test_x():
    import science_t2i
    assert hasattr(science_t2i, "NODE_CLASS_MAPPINGS")
