// PagSharp quick start, against the PagSharp package: load the built-in MNIST model, sample a few digits with
// Perturbed-Attention Guidance, save them as a PNG grid.
// From the repository root:
//   dotnet pack src/PagSharp -c Release -o artifacts/feed
//   dotnet run -c Release --project samples/QuickStart -p:RestoreAdditionalProjectSources=$PWD/artifacts/feed -- pag.png
using PagSharp.Imaging;
using PagSharp.Pipelines;
using PagSharp.Runtime;

string path = args.Length > 0 ? args[0] : "pag.png";

// Before the first torch call: torch threads (one per core), idle OpenMP threads that sleep rather than spin, and
// glibc's allocator told to reuse freed blocks. Without it a busy machine can make sampling many times slower.
CpuRuntime.Configure();

// The built-in model ships in the package; its build targets copy it into models/ beside this program.
using var pipe = AdmPipeline.BuiltIn();
Console.WriteLine($"model: {pipe.Loaded.Source} ({pipe.AttentionLayers.Count} self-attention layers)");

// The digits 0–7 (the built-in model is class-conditional), PAG at scale 2 on the model's recommended layers (the
// middle block when it has none), DDPM with 100 steps (this small model's clean setting; see models/mnist/README.md);
// sample i starts from seed Seed + i.
var options = new SamplingOptions
{
    Scheduler = "ddpm",
    Steps = 100,
    Labels = [0, 1, 2, 3, 4, 5, 6, 7],
    Seed = 0,
    Guidance = pipe.Pag(scale: 2),
};
using var digits = pipe.Generate(8, options); // float32 [8,1,28,28] in [-1, 1]
Grid.Save(path, digits, nrow: 4);
Console.WriteLine($"wrote {path}");
