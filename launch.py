"""MXNet's own distributed launcher (mxnet/tools/launch.py), made to run on Python >= 3.9.

dmlc_tracker, which the launcher drives, calls threading.Thread.isAlive, removed in Python 3.9; this script
restores that one name and hands over to the launcher unchanged (local, ssh, mpi, sge, yarn launchers).
Example: python launch.py -n 2 -s 1 --launcher local python train_gqn.py --kvstore dist_sync --run-dir runs/dist
"""
import runpy
import threading

if not hasattr(threading.Thread, "isAlive"):
    threading.Thread.isAlive = threading.Thread.is_alive

if __name__ == "__main__":
    runpy.run_module("mxnet.tools.launch", run_name="__main__", alter_sys=True)
