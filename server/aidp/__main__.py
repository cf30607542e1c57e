from aidp.cli.main import main

raise SystemExit(main())
