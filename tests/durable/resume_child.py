"""Finish snapshotted programs in a fresh interpreter: the child side of test_resume.

Reads a pickled list of (snapshot bytes, value to send) from the file named
on the command line, restores each with the standard pickle module, drives
it to the end and prints the traces as JSON.
"""

import json
import pickle
import sys

from durable_programs import run

with open(sys.argv[1], "rb") as file:
    cases = pickle.load(file)
traces = []
for data, value in cases:
    restored = pickle.loads(data)
    traces.append(run(restored, value))
json.dump(traces, sys.stdout)
