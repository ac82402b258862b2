from quip.cli import main

main()
