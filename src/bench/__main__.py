"""python -m src.bench [options]: src/bench/suite.py."""

from src.bench.suite import main

main()
