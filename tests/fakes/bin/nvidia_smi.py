"""The body of the fake `nvidia-smi` (see the shell wrapper beside it).

Answers the two invocations ciopt.hardware makes, formatted as the real tool does:
  nvidia-smi                                        the banner with "CUDA Version: X.Y"
  nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits
A JSON with "fail" (or no $CIOPT_FAKE_NVIDIA_SMI) exits 9 with the driver error
the real tool prints when no driver is loaded.
"""

from __future__ import annotations

import json
import os
import sys

DRIVER_ERROR = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                "Make sure that the latest NVIDIA driver is installed and running.")


def main(argv: list[str]) -> int:
    path = os.environ.get("CIOPT_FAKE_NVIDIA_SMI")
    data = None
    if path:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    if data is None or data.get("fail"):
        print(DRIVER_ERROR)
        return 9
    gpus = data.get("gpus", [])
    driver = str(data.get("driver", "550.54.15"))
    cuda = str(data.get("cuda", "12.4"))
    query = next((a.split("=", 1)[1] for a in argv if a.startswith("--query-gpu=")), None)
    if query is None:
        print("+-----------------------------------------------------------------------------------------+")
        print(f"| NVIDIA-SMI {driver:<22} Driver Version: {driver:<14} CUDA Version: {cuda:<9}|")
        print("|-----------------------------------------+------------------------+----------------------+")
        for i, g in enumerate(gpus):
            print(f"|   {i}  {g.get('name', 'NVIDIA Fake GPU'):<35}|")
        return 0
    for i, g in enumerate(gpus):
        mib = int(g["memory_mib"]) if "memory_mib" in g else int(float(g.get("memory_gb", 16)) * 1024)
        values = {
            "index": str(i),
            "name": str(g.get("name", "NVIDIA Fake GPU")),
            "memory.total": str(mib),
            "driver_version": driver,
            "uuid": str(g.get("uuid", f"GPU-fake-{i:04d}")),
        }
        print(", ".join(values.get(field.strip(), "[N/A]") for field in query.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
