from mashup.cli import main

main()
