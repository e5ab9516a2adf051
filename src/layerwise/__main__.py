import sys

from layerwise.cli import main

if __name__ == "__main__":  # a worker started by spawn imports this module too: it must not run the command
    sys.exit(main())
