from mmf_lightning.cli import main

main()
