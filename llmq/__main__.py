from llmq.api.cli import main

main()
