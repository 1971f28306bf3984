from respond.cli import main

raise SystemExit(main())
