return PagSharp.Cli.App.Run(args);
