from htabtool.cli import main

main()
