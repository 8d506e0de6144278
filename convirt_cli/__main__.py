from convirt_cli.main import run

run()
