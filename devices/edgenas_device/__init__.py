"""The code that runs *on* a device: stdlib + numpy, Python >= 3.8, no edgenas import.

It ships to devices as one zipapp file; the host imports the same modules (as ``edgenas_device``)
for the rules both sides must agree on: the runner's output contract, device facts, manifest rules
and install hints.  Nothing here may import torch, TensorFlow or anything of ``edgenas``.
"""
