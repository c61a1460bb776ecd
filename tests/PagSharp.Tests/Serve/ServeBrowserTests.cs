using Microsoft.Playwright;

namespace PagSharp.Tests.Serve;

/// <summary>A fact that needs Debian's Chromium (<c>apt-get install chromium</c>; .ci/run installs it), skipped with that message where it is missing.</summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public ChromiumFactAttribute()
    {
        if (ServeBrowserTests.Chromium is null)
            Skip = "no Chromium installed (looked for /usr/bin/chromium, /usr/lib/chromium/chromium, or PAGSHARP_CHROMIUM): apt-get install chromium";
    }
}

/// <summary>
/// The page in a real headless browser: Playwright drives the system's Chromium through <c>ExecutablePath</c>
/// (nothing is downloaded). It loads the page, runs a small comparison on the built-in model, waits for the grid and
/// checks every image, shows a server-side validation message, and makes no request to any other origin.
/// PAGSHARP_SERVE_SCREENSHOT=docs/serve.png also writes the screenshot of the README.
/// </summary>
[Collection(ServeCollection.Name)]
public sealed class ServeBrowserTests
{
    /// <summary>The Chromium executable, or null.</summary>
    public static string? Chromium { get; } =
        new[] { Environment.GetEnvironmentVariable("PAGSHARP_CHROMIUM"), "/usr/bin/chromium", "/usr/lib/chromium/chromium" }
            .FirstOrDefault(p => !string.IsNullOrEmpty(p) && File.Exists(p));

    [ChromiumFact]
    public async Task ThePageRunsAComparisonAndShowsTheGrid()
    {
        string? screenshot = Environment.GetEnvironmentVariable("PAGSHARP_SERVE_SCREENSHOT");
        await using var host = await ServeTestHost.StartAsync(kestrel: true);
        string url = host.App.Urls.Single();
        Environment.SetEnvironmentVariable("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium,
            Headless = true,
            Args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"],
            Timeout = 60_000,
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1360, Height = 900 } });
        page.SetDefaultTimeout(240_000); // generous: the full suite runs beside other collections and a training job
        var foreign = new List<string>();
        var consoleErrors = new List<string>();
        page.Request += (_, r) => { if (!r.Url.StartsWith(url, StringComparison.Ordinal) && !r.Url.StartsWith("data:", StringComparison.Ordinal)) foreign.Add(r.Url); };
        page.Console += (_, m) => { if (m.Type == "error") consoleErrors.Add(m.Text); };
        var failedResponses = new List<string>(); // which URLs the console's "Failed to load resource" lines were about
        page.Response += (_, r) => { if (r.Status >= 400) lock (failedResponses) failedResponses.Add($"{r.Status} {r.Request.Method} {r.Url}"); };

        await page.GotoAsync(url);
        await page.WaitForSelectorAsync("body[data-ready=true]");
        Assert.Equal("builtin", await page.InputValueAsync("#model"));
        Assert.Equal(7, await page.Locator("#layers tbody tr").CountAsync());
        Assert.True(await page.IsCheckedAsync("#layers input[value='output_blocks.1.1']")); // the model's recommended layer (guidance_defaults)

        // A bad value is refused by the server and its message shown on the page.
        await page.FillAsync("#steps", "0");
        await page.ClickAsync("#run");
        await page.WaitForSelectorAsync("#error:not([hidden])");
        Assert.Contains("'steps' must be an integer from 1 to 200", await page.InnerTextAsync("#error"));

        bool big = screenshot is not null;
        int rows = big ? 4 : 2;
        await page.FillAsync("#count", rows.ToString(System.Globalization.CultureInfo.InvariantCulture));
        await page.FillAsync("#steps", big ? "25" : "10");
        if (big)
        {
            await page.SelectOptionAsync("#label", "3");
            await page.CheckAsync("#m-cfg");
            await page.CheckAsync("#m-cfg\\+pag");
        }
        string tokens = await page.InnerTextAsync("#tokens");
        Assert.Equal(big ? "none, cfg:1.5, pag:1, cfg:1.5+pag:1" : "none, pag:1", tokens); // the model's recommended scales
        int cols = tokens.Split(", ").Length;
        await page.ClickAsync("#run");
        await page.WaitForSelectorAsync("#results-card:not([hidden])");
        Assert.True(await page.IsHiddenAsync("#error"));
        StringAssert(await page.InnerTextAsync("#status"), $"Done: {rows} seed(s) × {cols} method(s)");

        // Every cell's image has loaded, at the model's size (32×32).
        var cells = page.Locator("#grid img");
        Assert.Equal(rows * cols, await cells.CountAsync());
        await page.WaitForFunctionAsync("() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)");
        var sizes = await page.EvaluateAsync<int[][]>("() => [...document.querySelectorAll('#grid img')].map(i => [i.naturalWidth, i.naturalHeight])");
        Assert.All(sizes, s => Assert.Equal([32, 32], s));
        Assert.Equal(["seed", "seed"], (await page.Locator("#grid th.seed").AllInnerTextsAsync()).Take(2).Select(t => t.Split(' ')[0]));

        // The grid PNG, run.json and the zip download from the links; the grid loads at the size of the file written.
        string gridHref = (await page.GetAttributeAsync("#dl-grid", "href"))!;
        var gridSize = await page.EvaluateAsync<int[]>("href => new Promise((ok, fail) => { const i = new Image(); i.onload = () => ok([i.naturalWidth, i.naturalHeight]); i.onerror = fail; i.src = href; })", gridHref);
        string id = gridHref.Split('/')[3];
        PagSharp.Imaging.Png.LoadRgb8(Path.Combine(host.Output, id, "grid.png"), out int gw, out int gh);
        Assert.Equal([gw, gh], gridSize);
        Assert.True(gw > cols * 64, $"grid width {gw}");
        foreach (var link in new[] { "#dl-run", "#dl-zip" })
        {
            int status = await page.EvaluateAsync<int>("href => fetch(href).then(r => r.status)", await page.GetAttributeAsync(link, "href"));
            Assert.Equal(200, status);
        }

        string shot = Path.Combine(host.Dir.Path, "serve.png");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = shot, FullPage = true });
        Assert.True(new FileInfo(shot).Length > 10_000);
        if (screenshot is not null) File.Copy(shot, screenshot, overwrite: true);
        Assert.Empty(foreign);
        Assert.True(consoleErrors.All(e => e.Contains("400", StringComparison.Ordinal)),
            string.Join("\n", consoleErrors) + "\nresponses ≥ 400: " + string.Join("; ", failedResponses)); // only the refused request
    }

    private static void StringAssert(string actual, string expectedStart) =>
        Assert.True(actual.StartsWith(expectedStart, StringComparison.Ordinal), $"expected '{expectedStart}…', got '{actual}'");
}
