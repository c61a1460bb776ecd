int exit = PagSharp.Cli.App.Run(args);
PagSharp.Cli.Hosting.StartupTrace.Mark("exit");
return exit;
