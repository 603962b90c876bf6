from mmf_lightning.commands import main

main()
