from router_controller.cli import main

raise SystemExit(main())
