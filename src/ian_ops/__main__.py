"""`python -m ian_ops` is the same as the `ian` command."""

from ian_ops.app import main

main()
