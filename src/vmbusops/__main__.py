from vmbusops.cli.main import main

main()
