from kf_desktop.cli import main

raise SystemExit(main())
