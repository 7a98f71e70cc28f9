from dycon_monai.benchmark.cli import main

raise SystemExit(main())
