import os
import runpy
import sys

sys.setswitchinterval(float(os.environ.get("SI", "0.005")))
runpy.run_module("chatd", run_name="__main__", alter_sys=True)
