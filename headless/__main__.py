"""``python -m headless collect|profile|sweep ... --help``"""
import sys

from headless.cli import main

sys.exit(main())
