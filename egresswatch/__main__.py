from egresswatch.cli import main

main()
