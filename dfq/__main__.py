from dfq.cli import main

main()
