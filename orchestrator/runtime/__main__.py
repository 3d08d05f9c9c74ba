import sys

from orchestrator.runtime.main import main

sys.exit(main())
