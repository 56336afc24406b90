"""`python -m jaxseg.doctor [--quick] [--json OUT] ...`: the doctor without the rest of the CLI."""
import sys

from jaxseg.doctor.command import main

sys.exit(main())
