from banray.commands.cli import main

main()
