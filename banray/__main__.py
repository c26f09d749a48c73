from banray.cli import main

main()
