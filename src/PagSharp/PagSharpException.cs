namespace PagSharp;

/// <summary>
/// The one exception type the library throws for bad input: a malformed or hostile file, a key or shape that does
/// not match, an unknown layer name, an invalid option. The message says what is wrong and what would be valid.
/// </summary>
public class PagSharpException : Exception
{
    public PagSharpException(string message) : base(message) { }
    public PagSharpException(string message, Exception inner) : base(message, inner) { }
}
