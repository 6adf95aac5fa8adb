from localmesh.cli.main import main

raise SystemExit(main())
