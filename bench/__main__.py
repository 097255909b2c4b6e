"""`python -m bench`: the service-vs-bare table (bench/service.py) at 64 px, then 224 px.

Extra arguments go to both runs (e.g. `--seconds 8`). The runtime table alone:
`python -m bench.runtimes`; JPEG decoding: `python -m bench.decode`.
"""

import sys

from bench.service import main

main(["--size", "64", "--images", "1000", *sys.argv[1:]])
main(["--size", "224", "--images", "300", *sys.argv[1:]])
