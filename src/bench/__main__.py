"""python -m src.bench [options]: src/bench/__init__.py."""

from src.bench import main

main()
