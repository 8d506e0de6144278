from convirt_cli.cli.main import run

run()
