"""`python -m dicomweb_server serve ...`."""

from dicomweb_server.cli import main

raise SystemExit(main())
