"""`python -m bench`: the service-vs-bare-PyTorch table (see bench/service.py)."""

from bench.service import main

main()
