from convirt_cli.cli.entry import run

run()
