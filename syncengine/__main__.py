from syncengine.cli import main

main()
