"""`python -m orchestrator.weights fetch|check DIR`: the entry point; the code is
`orchestrator.models.weights`."""
import sys

from orchestrator.models.weights import main

if __name__ == "__main__":
    sys.exit(main())
