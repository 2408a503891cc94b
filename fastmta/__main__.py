from fastmta.cli import main

main()
