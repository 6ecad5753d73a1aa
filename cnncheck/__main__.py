from cnncheck.cli import main

raise SystemExit(main())
