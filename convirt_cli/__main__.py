from convirt_cli.cli.entry import run

if __name__ == "__main__":  # worker processes (forkserver, spawn) import this module again, as __mp_main__
    run()
